"""Which script an interpreter runs, read from its command line (issue 14).

The reading must never name a script the interpreter does not run: an `allow … script=ok.py`
rule would then let other code through. So every doubt (an option we do not know, inline code,
an option that loads other code) gives no script, which no `script=` rule matches.
"""

from __future__ import annotations

import pytest

from snitch_common.rules import DEFAULT_INTERPRETERS
from snitchd.procs.scripts import Interpreters, script_of


@pytest.mark.parametrize(
    ("exe", "family"),
    [
        ("/usr/bin/python3.11", "python"),
        ("/usr/bin/python3", "python"),
        ("/usr/bin/perl5.36.0", "perl"),
        ("/usr/bin/dash", "sh"),
        ("/usr/bin/bash", "sh"),
        ("/usr/lib/jvm/java-17-openjdk-amd64/bin/java", "java"),
        ("/usr/bin/lua5.4", "lua"),
        ("/usr/bin/curl", None),
        ("/usr/bin/pythonista", None),
        ("/usr/bin/shred", None),
    ],
)
def test_interpreters_are_known_by_name_with_a_version(exe: str, family: str | None) -> None:
    assert Interpreters(DEFAULT_INTERPRETERS).family(exe) == family


def test_a_configured_name_without_a_reading_takes_only_a_plain_first_argument() -> None:
    interpreters = Interpreters(("tclsh",))
    assert interpreters.family("/usr/bin/tclsh8.6") == ""
    assert script_of("", ("tclsh", "x.tcl")) == "x.tcl"
    assert script_of("", ("tclsh", "-encoding", "utf-8", "x.tcl")) is None


@pytest.mark.parametrize(
    ("family", "argv", "script"),
    [
        ("python", ("python3", "ok.py"), "ok.py"),
        ("python", ("python3", "-u", "-B", "ok.py", "-c", "x"), "ok.py"),
        ("python", ("python3", "-uB", "/x/ok.py"), "/x/ok.py"),
        ("python", ("python3", "-c", "import socket"), None),
        ("python", ("python3", "-Sc", "import socket"), None),
        ("python", ("python3", "-m", "http.server"), None),
        ("python", ("python3", "-W", "ok.py", "evil.py"), None),
        ("python", ("python3", "-X", "ok.py", "evil.py"), None),
        ("python", ("python3", "--check-hash-based-pycs", "ok.py", "evil.py"), None),
        ("python", ("python3",), None),
        ("python", ("python3", "-"), None),
        ("sh", ("bash", "-e", "run.sh"), "run.sh"),
        ("sh", ("bash", "-c", "exec 3<>/dev/tcp/x/1", "ok.sh"), None),
        ("sh", ("sh", "-ec", "true", "ok.sh"), None),
        ("sh", ("bash", "-o", "pipefail", "run.sh"), "run.sh"),
        ("sh", ("bash", "--rcfile", "evil", "-i"), None),
        ("sh", ("bash", "-s"), None),
        ("perl", ("perl", "-w", "x.pl"), "x.pl"),
        ("perl", ("perl", "-e", "print 1"), None),
        ("perl", ("perl", "-Mevil", "x.pl"), None),
        ("ruby", ("ruby", "-rsocket", "x.rb"), None),
        ("node", ("node", "app.js"), "app.js"),
        ("node", ("node", "-r", "evil.js", "app.js"), None),
        ("node", ("node", "--require=evil.js", "app.js"), None),
        ("php", ("php", "-f", "x.php"), "x.php"),
        ("php", ("php", "-r", "code"), None),
        ("php", ("php", "-d", "auto_prepend_file=evil.php", "x.php"), None),
        ("lua", ("lua", "-e", "code"), None),
        ("java", ("java", "-Xmx1g", "-cp", "lib", "-jar", "app.jar"), "app.jar"),
        ("java", ("java", "-javaagent:evil.jar", "-jar", "app.jar"), None),
        ("java", ("java", "Main"), None),
        ("java", ("java", "--add-modules", "x", "-jar", "app.jar"), None),
    ],
)
def test_script_is_named_only_when_the_command_line_is_sure(
    family: str, argv: tuple[str, ...], script: str | None
) -> None:
    assert script_of(family, argv) == script
