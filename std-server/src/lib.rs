//! tether-server (filled by its own issue).
