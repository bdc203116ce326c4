"""Differential tests: slurm-vm's ClassAd evaluator and matcher against HTCondor's own library
(PyPI `htcondor`, module classad2, with the daemons' defaults). Thousands of generated expressions and
job/image ad pairs must agree, except the known differences listed in docs/classad.md."""
import json
import os

import pytest

import compare
import gen

BIN = os.environ.get("SLURM_VM_BIN") or compare.default_binary()
COUNT = int(os.environ.get("DIFF_COUNT", "4000"))

# Known, documented differences (docs/classad.md): requests whose expressions use these are compared
# but a mismatch on them is reported rather than failed.
KNOWN = ["stringListSubsetMatch(\"6.10\""]


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_generated_requests_agree(seed):
    g = gen.Gen(seed)
    reqs = [g.request(i) for i in range(COUNT)]
    crashed = []
    mismatches = compare.run(reqs, BIN, crashed)
    if crashed:
        print(f"HTCondor's library crashed on {len(crashed)} request(s); first: {json.dumps(crashed[0])[:300]}")
    assert len(crashed) <= COUNT // 500
    hard = [m for m in mismatches if not any(k in json.dumps(m[0]) + json.dumps(m[1]) for k in KNOWN)]
    # A handful of the rarest corner cases (listed in docs/classad.md) still differ: allow at most 0.1%.
    assert len(hard) <= COUNT // 1000, "\n".join(json.dumps(m, default=str)[:600] for m in hard[:5])
    assert len(reqs) == COUNT


def test_hand_written_cases_agree():
    cases = [
        "1 + 2 * 3", "10 / 3", "-7 % 3", "1.0 / 0", "\"a\" == \"A\"", "\"a\" =?= \"A\"", "undefined || true",
        "undefined && false", "error || true", "x ?: 5", "10 ?: 2 + 3", "10 ? : 2 + 3", "{1, 2, 3}[1]",
        "[a = 1; b = a + 1].b", "[a = b; b = a].a", "member(\"mpich\", {\"MPICH\", \"fftw\"})",
        "regexp(\"^deb\", \"debian\")", "versioncmp(\"6.10\", \"6.9\")", "stringListMember(\"b\", \"a, b ,c\")",
        "split(\"a, b,,c\")", "string(1.5)", "int(\"0x10\")", "real(\"INF\")", "quantize(5, {2, 4, 8})",
        "sum({1, true, undefined})", "1 << 64", "-8 >>> 1", "9223372036854775807 + 1", "ifThenElse(undefined, 1, 2)",
        # Issue 22's findings: a negative offset before the start, other capitalisations of the version
        # functions, HTCondor's name of the regexp list member, UNDEFINED and tab delimiters.
        "substr(\"abc\", -5)", "substr(\"abc\", -5, 2)", "substr(\"abc\", -5, -1)", "substr(\"abc\", -2, -5)",
        "versionGT(\"1.10\", \"1.9\")", "VERSIONLE(\"1\", \"2\")", "Version_In_Range(\"1.5\", \"1\", \"2\")",
        "stringList_regexpMember(\"^a\", \"b, ab\")", "stringListRegexpMember(\"^a\", \"b, ab\")",
        "stringList_regexpMember(\"^a\", \"b, ab\", undefined)", "stringListMember(\"a\", \"a b\", undefined)",
        "stringListIMember(\"A\", \"a b\", undefined)", "stringListSubsetMatch(\"a\", \"a b\", undefined)",
        "stringListSize(\"a,b\", undefined)", "stringListSum(\"1,2\", undefined)", "stringListsIntersect(\"a,b\", \"b\", undefined)",
        "stringListSize(\"a\\tb\", \"\\t\")", "stringListMember(\"b\", \"a\\tb\", \"\\t\")",
    ]
    reqs = [{"id": str(i), "kind": "expr", "expr": c} for i, c in enumerate(cases)]
    assert compare.run(reqs, BIN) == []


def test_match_pairs_agree():
    job = "[Owner = \"alice\"; VCPUs = 4; Requirements = TARGET.MaxVCPUs >= MY.VCPUs && member(\"mpich\", TARGET.Libraries); Rank = -TARGET.SizeMB]"
    images = [
        "[Name = \"a\"; MaxVCPUs = 8; Libraries = {\"mpich\"}; SizeMB = 10; Requirements = TARGET.Owner == \"alice\"; Rank = 1]",
        "[Name = \"b\"; MaxVCPUs = 2; Libraries = {\"mpich\"}; SizeMB = 10; Requirements = true]",
        "[Name = \"c\"; MaxVCPUs = 8; Libraries = {\"openmpi\"}; Requirements = Owner =!= \"alice\"]",
        "[Name = \"d\"; MaxVCPUs = 8; Libraries = {\"mpich\"}]",
    ]
    reqs = [{"id": str(i), "kind": "match", "left": job, "right": im} for i, im in enumerate(images)]
    assert compare.run(reqs, BIN) == []
