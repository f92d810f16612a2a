//! tether demo.
