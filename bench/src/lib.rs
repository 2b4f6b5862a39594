//! sipis load generators and benchmark helpers.
