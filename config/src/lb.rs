//! placeholder, replaced by the lb work
