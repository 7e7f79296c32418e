"""Which script an interpreter runs: read from its command line, for rules that name it (issue 14).

A rule for `/usr/bin/python3` lets every Python program through, a one-line reverse shell
included; `script=` narrows it to one file. The command line is the interpreter's own to read,
so this reading must never name a script the interpreter does not run: each family's options
are a closed list, and an option we do not know (it may take the next word as its value and make
the word we would call the script something else), an option that loads other code (`-m`, `-r`,
`-javaagent`) or inline code (`-c`, `-e`, stdin) gives no script at all, which no `script=` rule
matches. The variables in `CODE_ENV` load other code into the interpreter before its script
runs (PYTHONPATH, BASH_ENV, ...): a process that has one set is named with its script, but a
rule naming the script does not match it. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from snitch_common.rules import interpreter_name

__all__ = ["CODE_ENV", "Interpreters", "family_of", "script_of"]


@dataclass(frozen=True, slots=True)
class _Options:
    """One family's command line: short flags without a value (may be clustered), flags whose
    value is inline code, long options without a value, and options whose next word is the
    script (`-f`, `-jar`)."""

    plain: str
    inline: str
    long_plain: frozenset[str] = frozenset()
    script_flag: str | None = None


_FAMILIES: dict[str, _Options] = {
    "python": _Options(plain="bBdEhiIOPqsSuvVxR", inline="c"),
    "perl": _Options(plain="acnpsStTuUwWX", inline="eE"),
    "ruby": _Options(plain="acdlnpsSvwWy", inline="e"),
    "node": _Options(plain="", inline="ep", long_plain=frozenset({"--no-warnings"})),
    "php": _Options(plain="hiqvlsnHe", inline="rBRFE", script_flag="-f"),
    "lua": _Options(plain="iEvW", inline="e"),
    "sh": _Options(
        plain="abefhkmnptuvxBCHPEilrT",
        inline="cs",
        long_plain=frozenset({"--norc", "--noprofile", "--posix", "--login", "--noediting"}),
    ),
}
_ALIASES = {
    "nodejs": "node",
    "luajit": "lua",
    "bash": "sh",
    "dash": "sh",
    "zsh": "sh",
    "ksh": "sh",
    "mksh": "sh",
}

# Variables that make an interpreter run code besides its script (or before it).
CODE_ENV: dict[str, tuple[str, ...]] = {
    "python": ("PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONSTARTUP", "PYTHONINSPECT"),
    "perl": ("PERL5LIB", "PERLLIB", "PERL5OPT", "PERL5DB"),
    "ruby": ("RUBYLIB", "RUBYOPT"),
    "node": ("NODE_OPTIONS", "NODE_PATH"),
    "php": ("PHPRC", "PHP_INI_SCAN_DIR"),
    "lua": (
        "LUA_INIT",
        "LUA_INIT_5_1",
        "LUA_INIT_5_2",
        "LUA_INIT_5_3",
        "LUA_INIT_5_4",
        "LUA_PATH",
        "LUA_CPATH",
    ),
    "sh": ("BASH_ENV", "ENV", "ZDOTDIR", "SHELLOPTS", "BASHOPTS", "PS4"),
    "java": ("JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS", "CLASSPATH"),
}


class Interpreters:
    """The configured interpreter names (config `interpreters`; a version suffix is allowed:
    realpath makes /usr/bin/python3 /usr/bin/python3.11), and each executable's family."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = frozenset(names)

    def family(self, exe: str) -> str | None:
        """The family of `exe` ("python", "sh", ... or "" for a configured name we have no
        reading for), or None when it is not an interpreter."""
        name = interpreter_name(exe, self.names)
        return None if name is None else family_of(name)


def family_of(name: str) -> str:
    name = _ALIASES.get(name, name)
    return name if name in _FAMILIES or name == "java" else ""


def script_of(family: str, argv: tuple[str, ...]) -> str | None:
    """The script argument (as written: maybe relative), or None: inline code, stdin, a module,
    or a command line this reading is not sure of."""
    args = argv[1:]
    if family == "java":
        return _java_jar(args)
    options = _FAMILIES.get(family)
    if options is None:  # a configured interpreter we have no reading for: no option at all
        return args[0] if args and not args[0].startswith(("-", "+")) else None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-", "--") or not arg:
            return None  # stdin, or an end of options some readings differ on
        if options.script_flag is not None and arg == options.script_flag:
            return args[i + 1] if i + 1 < len(args) else None
        if arg.startswith("--"):
            if arg not in options.long_plain:
                return None
        elif arg[0] == "-" or (family == "sh" and arg[0] == "+"):
            if family == "sh" and arg[1:] == "o":
                i += 2  # -o NAME / +o NAME: a shell option's name, not code
                continue
            for letter in arg[1:]:
                if letter in options.inline or letter not in options.plain:
                    return None
        else:
            return arg
        i += 1
    return None


def _java_jar(args: tuple[str, ...]) -> str | None:
    """`java [options] -jar FILE`: FILE; a main class, or an agent (`-javaagent`), is none."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-jar":
            return args[i + 1] if i + 1 < len(args) else None
        if arg in ("-cp", "-classpath", "--class-path"):
            i += 2
            continue
        if not arg.startswith("-") or arg.startswith(("-javaagent", "-agentlib", "-agentpath")):
            return None
        if arg.startswith("--") and "=" not in arg:
            return None  # --add-modules X and the like: may take the next word
        i += 1
    return None
