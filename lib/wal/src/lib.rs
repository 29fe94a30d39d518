//! The durable write-ahead queue (being written).
