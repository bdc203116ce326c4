#!/usr/bin/env bash
# Formats every source as the repo's .swift-format and .clang-format say; scripts/test.sh (CI) fails
# when something is not formatted so.
set -euo pipefail
cd "$(dirname "$0")/.."
swift format format -i -r Sources Tests Images/Builder Package.swift
git ls-files '*.c' '*.h' | xargs clang-format -i
