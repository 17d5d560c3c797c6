"""The modules packed into model archives, one package: `marport.handlers` when installed, `marport_serving` inside
an archive (names.ARCHIVE_PACKAGE), never generic top-level names; they import each other relatively."""
