import EventLoop
import Glibc

/// The `pid_file`: the process id, written once every listener is bound (so an instance that fails to
/// bind never overwrites the running one's), replaced atomically, and removed at exit if it still names
/// this process.
struct PidFile {
    let path: String
    let pid: Int32

    /// Writes the current process id to `path` (through a temporary file renamed over it).
    static func write(_ path: String) throws(SystemError) -> PidFile {
        let pid = getpid()
        let temporary = "\(path).\(pid).tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SystemError("pid_file: open \(temporary)", errno: errno) }
        let text = Array("\(pid)\n".utf8)
        let written = text.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        let writeError = errno
        close(fd)
        guard written == text.count else {
            unlink(temporary)
            throw SystemError("pid_file: write \(temporary)", errno: writeError)
        }
        guard rename(temporary, path) == 0 else {
            let code = errno
            unlink(temporary)
            throw SystemError("pid_file: rename to \(path)", errno: code)
        }
        return PidFile(path: path, pid: pid)
    }

    /// Removes the file, unless another process has written its own id there since.
    func remove() {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        close(fd)
        guard n > 0, Int32(String(decoding: buffer[0..<n], as: UTF8.self).split(separator: "\n").first ?? "") == pid else {
            return
        }
        unlink(path)
    }
}
