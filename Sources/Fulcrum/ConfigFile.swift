import FulcrumCore
import Glibc

/// Reads and validates a configuration file from disk.
public enum ConfigFile {
    public enum LoadError: Error, CustomStringConvertible {
        case unreadable(path: String, errno: Int32)
        case invalid(ConfigError)

        public var description: String {
            switch self {
            case .unreadable(let path, let code):
                return "\(path): cannot read the configuration file: \(String(cString: strerror(code)))"
            case .invalid(let error):
                return error.description
            }
        }
    }

    public static func load(path: String) throws(LoadError) -> FulcrumConfig {
        guard let text = readFile(path) else { throw .unreadable(path: path, errno: errno) }
        do {
            return try ConfigLoader.load(text: text, file: path)
        } catch {
            throw .invalid(error)
        }
    }

    static func readFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { return nil }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
