#!/usr/bin/env python
"""Classify images with a trained model: python test.py --help"""
from classifier.commands.test import main

if __name__ == "__main__":
    main()
