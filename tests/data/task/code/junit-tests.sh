#!/bin/sh
# Runs the example's tests like a test runner would: output on stdout, a JUnit XML report in /reports.
set -u
mkdir -p /reports
echo "runner: using API token $API_TOKEN"
started=$(date +%s)
if output=$(run-tests 2>&1); then status=0; else status=$?; fi
echo "$output"
elapsed=$(( $(date +%s) - started ))
failures=0
failure=""
if [ "$status" -ne 0 ]; then
  failures=1
  failure="<failure message=\"run-tests exited with $status\">$(echo "$output" | tail -n 1)</failure>"
fi
cat >/reports/junit.xml <<XML
<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="redis-round-trip" tests="1" failures="$failures" errors="0" time="$elapsed">
  <testcase classname="example.redis" name="ping_set_get" time="$elapsed">$failure</testcase>
</testsuite>
XML
echo "runner: wrote /reports/junit.xml ($failures failures)"
exit "$status"
