//! The model repository: model directories, their configs, labels and versions.

pub mod config;
