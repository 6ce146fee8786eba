import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// How a running process was started, read from /proc: `fulcrum reload` and `fulcrum upgrade` use the
/// `--config` and `--log-level` of the `fulcrum run` they act on.
struct RunningCommand {
    let pid: Int32
    let arguments: [String]

    /// Nil when the process's command line cannot be read.
    init?(pid: Int32) {
        guard let text = readSmallFile("/proc/\(pid)/cmdline"), !text.isEmpty else { return nil }
        self.pid = pid
        arguments = text.split(separator: "\0", omittingEmptySubsequences: false).dropLast().map(String.init)
    }

    /// Whether it is `fulcrum run` (its first argument is `run`).
    var isRun: Bool { arguments.count >= 2 && arguments[1] == "run" }

    /// Its `--config`/`-c`, made absolute with its working directory; nil when it has none, or a relative
    /// one in a directory that cannot be read.
    var config: String? {
        guard let value = option("--config", short: "-c") else { return nil }
        if value.hasPrefix("/") { return value }
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/\(pid)/cwd", &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) + "/" + value
    }

    /// Its `--log-level`, nil when it has none (it runs at the default level).
    var logLevel: String? { option("--log-level") }

    /// The last value given to `name` (`--name VALUE` or `--name=VALUE`) or `short`.
    private func option(_ name: String, short: String? = nil) -> String? {
        var value: String?
        for (index, argument) in arguments.enumerated() {
            if argument == name || argument == short, index + 1 < arguments.count {
                value = arguments[index + 1]
            } else if argument.hasPrefix(name + "=") {
                value = String(argument.dropFirst(name.count + 1))
            }
        }
        return value
    }

    /// Why acting on FILE `given` is refused when this process runs another file: it reads its own file
    /// only. Nil when it runs `given` (the same file by any path) or its file is unknown.
    func otherConfigProblem(_ given: String, command: String, origin: String, nothing: String) -> String? {
        guard let running = config, !sameFile(running, given) else { return nil }
        return "process \(pid)\(origin) was started with --config \(running), which is the file it reads, not "
            + "\(given); \(nothing). Run `fulcrum \(command) --config \(running)`, or edit \(running)"
    }
}

/// Whether two paths name the same file (same device and inode); false when either cannot be read.
func sameFile(_ a: String, _ b: String) -> Bool {
    var sa = stat(), sb = stat()
    guard stat(a, &sa) == 0, stat(b, &sb) == 0 else { return false }
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino
}

/// A small file (a pid file, a /proc entry) read whole, or nil with `errno` set when it cannot be read.
func readSmallFile(_ path: String) -> String? {
    guard access(path, R_OK) == 0 else { return nil }
    return FileManager.default.contents(atPath: path).map { String(decoding: $0, as: UTF8.self) }
}
