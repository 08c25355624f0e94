"""resnet-platform."""
