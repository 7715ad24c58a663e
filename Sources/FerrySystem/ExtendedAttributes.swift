import CFerrySystem
import Glibc
import SystemPackage

/// Extended attributes, byte-exact. On a regular file or directory the descriptor is used (`f*xattr`);
/// for a symlink, which cannot be opened for this, the path `/proc/self/fd/DIR/NAME` with the `l*`
/// calls, which do not follow the final link.
public enum ExtendedAttributes {
    /// The names of all attributes this process may see. The corresponding C function is `flistxattr`.
    public static func names(_ fd: FileDescriptor) throws(SystemError) -> [ByteString] {
        try listNames("flistxattr") { buffer, size in cferry_flistxattr(fd.rawValue, buffer, size) }
    }

    /// The corresponding C function is `llistxattr`, on a symlink named in a directory.
    public static func names(in directory: FileDescriptor, symlink name: ByteString) throws(SystemError) -> [ByteString] {
        try procPath(directory, name).withCPath { (path) throws(SystemError) in
            try listNames("llistxattr") { buffer, size in cferry_llistxattr(path, buffer, size) }
        }
    }

    /// The value of `name`, or nil if the file has no such attribute. The corresponding C function is
    /// `fgetxattr`.
    public static func value(_ fd: FileDescriptor, _ name: ByteString) throws(SystemError) -> ByteString? {
        try name.withCPath { (cname) throws(SystemError) in
            try readValue("fgetxattr", name) { buffer, size in cferry_fgetxattr(fd.rawValue, cname, buffer, size) }
        }
    }

    /// The corresponding C function is `lgetxattr`, on a symlink named in a directory.
    public static func value(in directory: FileDescriptor, symlink: ByteString, _ name: ByteString) throws(SystemError) -> ByteString? {
        try procPath(directory, symlink).withCPath { (path) throws(SystemError) in
            try name.withCPath { (cname) throws(SystemError) in
                try readValue("lgetxattr", name) { buffer, size in cferry_lgetxattr(path, cname, buffer, size) }
            }
        }
    }

    /// The corresponding C function is `fsetxattr`.
    public static func set(_ fd: FileDescriptor, _ name: ByteString, _ value: ByteString) throws(SystemError) {
        _ = try name.withCPath { (cname) throws(SystemError) in
            try syscallRetrying("fsetxattr", path: name.displayString) {
                value.withUnsafeBytes { cferry_fsetxattr(fd.rawValue, cname, $0.baseAddress, $0.count, 0) }
            }
        }
    }

    /// The corresponding C function is `lsetxattr`, on a symlink named in a directory.
    public static func set(in directory: FileDescriptor, symlink: ByteString, _ name: ByteString, _ value: ByteString) throws(SystemError) {
        _ = try procPath(directory, symlink).withCPath { (path) throws(SystemError) in
            try name.withCPath { (cname) throws(SystemError) in
                try syscallRetrying("lsetxattr", path: name.displayString) {
                    value.withUnsafeBytes { cferry_lsetxattr(path, cname, $0.baseAddress, $0.count, 0) }
                }
            }
        }
    }

    /// The corresponding C function is `fremovexattr`.
    public static func remove(_ fd: FileDescriptor, _ name: ByteString) throws(SystemError) {
        _ = try name.withCPath { (cname) throws(SystemError) in
            try syscallRetrying("fremovexattr", path: name.displayString) { cferry_fremovexattr(fd.rawValue, cname) }
        }
    }

    /// The POSIX ACL attributes: copied as raw xattrs, they carry the ACL exactly.
    public static let accessACL: ByteString = Array("system.posix_acl_access".utf8)
    public static let defaultACL: ByteString = Array("system.posix_acl_default".utf8)

    private static func procPath(_ directory: FileDescriptor, _ name: ByteString) -> ByteString {
        Array("/proc/self/fd/\(directory.rawValue)/".utf8) + name
    }

    private static func listNames(
        _ call: String, _ body: (UnsafeMutablePointer<CChar>?, Int) -> Int
    ) throws(SystemError) -> [ByteString] {
        while true {
            let size = try syscallRetrying(call) { body(nil, 0) }
            if size == 0 { return [] }
            var buffer = [CChar](repeating: 0, count: size)
            let got = body(&buffer, size)
            if got < 0 {
                if Glibc.errno == ERANGE || Glibc.errno == EINTR { continue }  // grew meanwhile
                throw SystemError(errno: Glibc.errno, syscall: call)
            }
            return buffer[0..<got].split(separator: 0).map { $0.map { UInt8(bitPattern: $0) } }
        }
    }

    private static func readValue(
        _ call: String, _ name: ByteString, _ body: (UnsafeMutableRawPointer?, Int) -> Int
    ) throws(SystemError) -> ByteString? {
        while true {
            let size = body(nil, 0)
            if size < 0 {
                if Glibc.errno == ENODATA { return nil }
                if Glibc.errno == EINTR { continue }
                throw SystemError(errno: Glibc.errno, syscall: call, path: name.displayString)
            }
            if size == 0 { return [] }
            var buffer = [UInt8](repeating: 0, count: size)
            let got = buffer.withUnsafeMutableBytes { body($0.baseAddress, size) }
            if got < 0 {
                if Glibc.errno == ERANGE || Glibc.errno == EINTR { continue }
                if Glibc.errno == ENODATA { return nil }
                throw SystemError(errno: Glibc.errno, syscall: call, path: name.displayString)
            }
            return Array(buffer[0..<got])
        }
    }
}
