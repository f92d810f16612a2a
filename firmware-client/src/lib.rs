//! tether-firmware (filled by its own issue).
