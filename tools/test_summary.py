#!/usr/bin/env python3
"""Test summary: one closing line, `N passed, M failed, K skipped`, counting each test case.

Reads meson's testlog.json; a meson test that wrote a JUnit XML during this run
(GoogleTest through meson's gtest protocol, pytest's --junitxml) counts its test
cases, any other counts once by its result.
"""
import json
import os
import sys
import xml.etree.ElementTree as ET

build = sys.argv[1] if len(sys.argv) > 1 else "build"
results = os.path.join(build, "test-results")
passed = failed = skipped = 0
failures = []
with open(os.path.join(build, "meson-logs", "testlog.json")) as log:
    for line in log:
        entry = json.loads(line)
        name, result = entry["name"], entry["result"]
        short = name.split(" / ")[-1]
        xml_path = os.path.join(results, short + ".xml")
        if not os.path.exists(xml_path):
            xml_path = os.path.join(build, short + ".xml")  # meson's own gtest output
        counted = False
        if result in ("OK", "FAIL") and os.path.exists(xml_path) and os.path.getmtime(xml_path) >= entry.get("starttime", 0):
            root = ET.parse(xml_path).getroot()
            cases = list(root.iter("testcase"))
            if cases:
                counted = True
                for case in cases:
                    if case.find("failure") is not None or case.find("error") is not None:
                        failed += 1
                        failures.append(f"{name}: {case.get('classname', '')}.{case.get('name')}")
                    elif case.find("skipped") is not None or case.get("result") == "skipped" or case.get("status") == "notrun":
                        skipped += 1
                    else:
                        passed += 1
                # A crash after the XML was written still fails the run.
                if result == "FAIL" and not any(f.startswith(name + ":") for f in failures):
                    failed += 1
                    failures.append(f"{name}: exited with failure")
        if not counted:
            if result == "OK":
                passed += 1
            elif result == "SKIP":
                skipped += 1
            else:
                failed += 1
                failures.append(f"{name}: {result}")
for f in failures:
    print(f"FAILED {f}")
print(f"{passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed else 0)
