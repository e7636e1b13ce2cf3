//! `resnet-train`: train a ResNet and export it to a model repository.
fn main() {}
