#!/usr/bin/env python
"""Train an image classifier: python train.py --help"""
from classifier.commands.train import main

if __name__ == "__main__":
    main()
