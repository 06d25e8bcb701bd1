//! Route: (to be written).
