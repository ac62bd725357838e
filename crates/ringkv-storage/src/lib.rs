//! Storage engines. (being implemented)
