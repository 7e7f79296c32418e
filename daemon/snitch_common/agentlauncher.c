/* snitch-agent: the only way an agent program starts where snitchd will take it as an agent.
 *
 * Why a compiled launcher: the agents are Python, so /proc/PID/exe of an agent is the
 * interpreter and the program was named only by argv, which lives in the process's own
 * writable memory: a `python3 evil.py` could write the agent's argv over its own. This binary
 * is installed root-owned and set-group-id (group snitch-agent, mode 2755) by install.sh. The
 * kernel then starts it in secure mode (AT_SECURE in /proc/PID/auxv, which the process cannot
 * change): the dynamic loader ignores LD_PRELOAD and its kin, the process is non-dumpable from
 * its first instruction, and under a tracer the set-group-id bit is not applied at all. So
 * /proc/PID/exe being this file and AT_SECURE = 1 tell snitchd (snitchd/agents.py) that this
 * code ran from the start with nothing of the user's in it. It embeds Python, isolated
 * (no PYTHON* variables, no user site, no current directory on the path), and runs one of a
 * fixed set of programs: argv chooses which, never what code.
 *
 * SNITCH_PYTHON (the venv's python, given at build time) tells the embedded interpreter which
 * venv it belongs to (its pyvenv.cfg); nothing is exec'd.
 *
 *   snitch-agent notifier [ARGS]   snitch-notifier ARGS
 *   snitch-agent terminal [ARGS]   snitchctl agent ARGS
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/prctl.h>
#include <unistd.h>

#ifndef SNITCH_PYTHON
#error "build with -DSNITCH_PYTHON=\"/path/to/venv/bin/python3\""
#endif

struct program {
    const char *name;
    const char *code;
};

/* sys.argv is [-c, ARGS...] when the code starts: each program puts its own name first. */
static const struct program PROGRAMS[] = {
    {"notifier",
     "import sys\n"
     "sys.argv[0] = 'snitch-notifier'\n"
     "from snitch_notifier.app import main\n"
     "sys.exit(main(sys.argv[1:]))\n"},
    {"terminal",
     "import sys\n"
     "sys.argv[0:1] = ['snitchctl', 'agent']\n"
     "from snitchctl.main import main\n"
     "sys.exit(main(sys.argv[1:]))\n"},
};

/* Variables that make a library load code of the caller's choosing, which secure mode does not
 * clear (glibc clears LD_* and its own; Python, isolated, reads no PYTHON*). Qt, GTK, GIO,
 * GStreamer, Mesa and Vulkan read these. */
static const char *const INJECTING[] = {
    "GCONV_PATH", "GIO_EXTRA_MODULES", "GIO_MODULE_DIR", "GST_PLUGIN_PATH", "GTK_MODULES",
    "GTK3_MODULES", "GTK_PATH", "LIBGL_DRIVERS_PATH", "QML2_IMPORT_PATH", "QML_IMPORT_PATH",
    "QT_PLUGIN_PATH", "QT_QPA_PLATFORM_PLUGIN_PATH", "VK_ICD_FILENAMES", "VK_LAYER_PATH",
    "__EGL_VENDOR_LIBRARY_DIRS", "__EGL_VENDOR_LIBRARY_FILENAMES", "OPENSSL_CONF",
    "OPENSSL_MODULES", "OPENSSL_ENGINES",
};

static int fail(const char *what) {
    fprintf(stderr, "snitch-agent: %s\n", what);
    return 1;
}

static int clear_environment(void) {
    for (size_t i = 0; i < sizeof INJECTING / sizeof *INJECTING; i++)
        unsetenv(INJECTING[i]);
    /* PYTHON* would reach the programs the agents start; LD_* is gone already. */
    for (int again = 1; again;) {
        again = 0;
        for (char **e = environ; e != NULL && *e != NULL; e++) {
            if (strncmp(*e, "PYTHON", 6) == 0 || strncmp(*e, "LD_", 3) == 0) {
                char *name = strndup(*e, strcspn(*e, "="));
                if (name == NULL)
                    return -1;
                unsetenv(name);
                free(name);
                again = 1;
                break;
            }
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (!getauxval(AT_SECURE))
        return fail("not started set-group-id: install.sh installs it root-owned, group "
                    "snitch-agent, mode 2755 (a tracer, no_new_privs or a nosuid mount "
                    "also stop that), and snitchd takes no agent started otherwise");
    /* The group only marked the start; give it back (libdbus and others treat a process
     * whose ids differ as set-group-id). The kernel keeps it non-dumpable. */
    gid_t gid = getgid();
    if (setresgid(gid, gid, gid) != 0)
        return fail("cannot give back the group snitch-agent");
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        return fail("prctl(PR_SET_DUMPABLE, 0) failed");
    if (argc < 2)
        return fail("usage: snitch-agent notifier|terminal [ARGS...]");
    const struct program *program = NULL;
    for (size_t i = 0; i < sizeof PROGRAMS / sizeof *PROGRAMS; i++)
        if (strcmp(argv[1], PROGRAMS[i].name) == 0)
            program = &PROGRAMS[i];
    if (program == NULL)
        return fail("unknown program: use notifier or terminal");
    if (clear_environment() != 0)
        return fail("out of memory");

    /* Isolated, but with the user's locale, and UTF-8 text whatever it is (as `python3 -X
     * utf8`): the agents show names and arrows to a terminal or a desktop. */
    PyPreConfig preconfig;
    PyPreConfig_InitIsolatedConfig(&preconfig);
    preconfig.configure_locale = 1;
    preconfig.utf8_mode = 1;
    PyStatus status = Py_PreInitialize(&preconfig);
    if (PyStatus_Exception(status))
        Py_ExitStatusException(status);

    PyConfig config;
    PyConfig_InitIsolatedConfig(&config);
    status = PyConfig_SetBytesString(&config, &config.program_name, SNITCH_PYTHON);
    if (!PyStatus_Exception(status))
        status = PyConfig_SetBytesString(&config, &config.run_command, program->code);
    if (!PyStatus_Exception(status))
        /* argv[0] is this launcher's; Python shows ARGS after "-c". */
        status = PyConfig_SetBytesArgv(&config, argc - 1, argv + 1);
    if (!PyStatus_Exception(status))
        status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status))
        Py_ExitStatusException(status);
    return Py_RunMain();
}
