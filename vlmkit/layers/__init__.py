"""Neural-network building blocks implemented directly in PyTorch (no torchvision / timm needed)."""
