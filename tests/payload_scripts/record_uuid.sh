#!/bin/sh
# Appends this job's uuid to a shared file: each execution leaves exactly one line.
echo "$P3S_JOB_UUID" >> "$P3S_RECORD_FILE"
