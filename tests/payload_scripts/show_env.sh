#!/bin/sh
# Prints the variables a p3s payload receives.
echo "P3S_JOB_UUID=$P3S_JOB_UUID"
echo "P3S_INPUT_FILE=$P3S_INPUT_FILE"
echo "P3S_TEST_VALUE=$P3S_TEST_VALUE"
echo "args=$*"
echo "to stderr" >&2
