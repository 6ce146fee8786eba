import CLibevent
import Glibc

/// Starts other programs and learns how they ended, without blocking the loop.
public enum ChildProcess {
    /// Starts `arguments[0]` (a path) with `arguments` and this process's environment, standard input,
    /// output and error. The child starts with no signal blocked and every signal at its default action
    /// (a signal mask and ignored signals would otherwise survive `exec`). Returns its process id.
    public static func spawn(_ arguments: [String]) throws(SystemError) -> Int32 {
        precondition(!arguments.isEmpty, "spawn needs a program")
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        sigemptyset(&none)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, arguments[0], nil, &attributes, argv, environ)
        guard result == 0 else { throw SystemError("spawn \(arguments[0])", errno: result) }
        return pid
    }

    /// How a child has ended, if it has (then it is reaped): "exited with status 1", "killed by signal 9".
    /// Nil while it runs.
    public static func ended(_ pid: Int32) -> String? {
        var status: Int32 = 0
        let result = waitpid(pid, &status, WNOHANG)
        guard result == pid else { return result < 0 ? "ended (\(errnoText(currentErrno)))" : nil }
        let low = status & 0x7f
        if low == 0 { return "exited with status \((status >> 8) & 0xff)" }
        return "was killed by signal \(low)"
    }
}
