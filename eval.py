#!/usr/bin/env python
"""Evaluate a trained model: python eval.py --help"""
from classifier.commands.eval import main

if __name__ == "__main__":
    main()
