//! The ringkv node. (being implemented)
