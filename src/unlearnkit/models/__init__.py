"""Model builders: a small CNN and a CIFAR-style ResNet (no torchvision needed)."""
