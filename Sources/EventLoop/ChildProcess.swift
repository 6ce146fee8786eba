import CLibevent
import Glibc

/// Starts other programs and learns how they ended, without blocking the loop.
public enum ChildProcess {
    /// Starts `arguments[0]` (a path) with `arguments` and this process's environment, standard input,
    /// output and error, and no other descriptor. The child starts with no signal blocked and every
    /// signal at its default action (a signal mask and ignored signals would otherwise survive `exec`).
    /// Returns its process id.
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
        closeOnExecInherited()
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

    /// Marks close-on-exec every descriptor above standard error that lacks it. Everything this process
    /// opens has it already; what it inherited without it (a parent's pipe or socket, which the parent
    /// may be watching for this process's end) must not stay open in a child that outlives it.
    /// posix_spawn_file_actions_addclosefrom_np would do this in the child, but Glibc's Swift module
    /// leaves out GNU extensions.
    static func closeOnExecInherited() {
        guard let directory = opendir("/proc/self/fd") else { return }
        defer { closedir(directory) }
        let own = dirfd(directory)
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard let fd = Int32(name), fd > 2, fd != own else { continue }
            let flags = fcntl(fd, F_GETFD)
            if flags >= 0 && flags & FD_CLOEXEC == 0 { _ = fcntl(fd, F_SETFD, flags | FD_CLOEXEC) }
        }
    }
}
