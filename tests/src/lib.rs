//! tether-tests (filled by its own issue).
