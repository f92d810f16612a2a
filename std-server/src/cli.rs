//! The tether command line.
