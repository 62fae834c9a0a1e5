#!/usr/bin/env python
"""Serve a trained model over HTTP (V2 inference protocol + POST /predict): python serve.py --help"""
from classifier.serve.cli import main

if __name__ == "__main__":
    main()
