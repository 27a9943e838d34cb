"""Datasets (VOCdevkit, images/ + masks/), VOC's classes and palette, and label sets with their mappings."""
