#!/usr/bin/env python
"""Export a checkpoint to ONNX (verified, optionally int8 and ORT mobile format): python export.py --help"""
from classifier.commands.export import main

if __name__ == "__main__":
    main()
