//! The canonical PAX/ustar header writer.
