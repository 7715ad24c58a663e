import CFerrySystem
import Glibc

/// A user as the kernel sees one: the ids a process running as them gets, and their home.
public struct UserIdentity: Sendable, Equatable, Codable {
    public var name: String
    public var uid: UInt32
    public var gid: UInt32
    /// Every group the user is in, the primary `gid` included: what `setgroups` gets.
    public var groups: [UInt32]
    public var home: String

    public init(name: String, uid: UInt32, gid: UInt32, groups: [UInt32], home: String) {
        self.name = name
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.home = home
    }

    /// The user called `name`, or nil when there is none (or the name could not be one). The
    /// corresponding C functions are `getpwnam_r` and `getgrouplist`.
    public static func lookup(name: String) throws(SystemError) -> UserIdentity? {
        guard isPlausibleName(name) else { return nil }
        return try withPasswordEntry("getpwnam_r", path: name) { entry, buffer, result in
            getpwnam_r(name, &entry, buffer.baseAddress!, buffer.count, &result)
        }
    }

    /// The user with this uid, or nil when the user database has none. The corresponding C
    /// functions are `getpwuid_r` and `getgrouplist`.
    public static func lookup(uid: UInt32) throws(SystemError) -> UserIdentity? {
        try withPasswordEntry("getpwuid_r", path: "uid \(uid)") { entry, buffer, result in
            getpwuid_r(uid, &entry, buffer.baseAddress!, buffer.count, &result)
        }
    }

    /// The process's effective user. A uid missing from the user database (a container started
    /// with `--user 12345`) still has an identity: its number as the name, the process's groups.
    public static var current: UserIdentity {
        let uid = geteuid()
        if let known = try? lookup(uid: uid) { return known }
        let count = getgroups(0, nil)
        var groups = [gid_t](repeating: 0, count: Int(max(count, 0)))
        let filled = groups.isEmpty ? 0 : getgroups(count, &groups)
        let gid = getegid()
        var all = Array(groups.prefix(Int(max(filled, 0))))
        if !all.contains(gid) { all.insert(gid, at: 0) }
        return UserIdentity(name: String(uid), uid: uid, gid: gid, groups: all, home: "/")
    }

    /// Names that cannot name a user are refused before they reach NSS modules, which were not
    /// written to expect them.
    static func isPlausibleName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 256 && !name.utf8.contains(where: { $0 == 0 || $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: ":") })
    }

    private static func withPasswordEntry(
        _ call: String, path: String,
        _ body: (inout passwd, UnsafeMutableBufferPointer<CChar>, inout UnsafeMutablePointer<passwd>?) -> CInt
    ) throws(SystemError) -> UserIdentity? {
        let suggested = sysconf(Int32(_SC_GETPW_R_SIZE_MAX))
        var capacity = suggested > 0 ? suggested : 1024
        while true {
            var buffer = [CChar](repeating: 0, count: capacity)
            var entry = passwd()
            var result: UnsafeMutablePointer<passwd>?
            let status = buffer.withUnsafeMutableBufferPointer { body(&entry, $0, &result) }
            switch status {
            case 0:
                guard let found = result?.pointee, let rawName = found.pw_name else { return nil }
                let name = String(cString: rawName)
                let home = found.pw_dir.map { String(cString: $0) } ?? "/"
                return UserIdentity(name: name, uid: found.pw_uid, gid: found.pw_gid,
                                    groups: try groupList(name: rawName, gid: found.pw_gid), home: home)
            case EINTR:
                continue
            case ERANGE where capacity < 1 << 20:
                capacity *= 4
            // Not-found as errno, which POSIX allows instead of a nil result.
            case ENOENT, ESRCH, EBADF, EPERM:
                return nil
            default:
                throw SystemError(errno: status, syscall: call, path: path)
            }
        }
    }

    private static func groupList(name: UnsafePointer<CChar>, gid: gid_t) throws(SystemError) -> [UInt32] {
        var count: CInt = 32
        while true {
            var groups = [gid_t](repeating: 0, count: Int(count))
            var filled = count
            if getgrouplist(name, gid, &groups, &filled) >= 0 {
                return Array(groups.prefix(Int(filled)))
            }
            // -1 with `filled` set to the number needed; glibc caps at NGROUPS_MAX.
            guard filled > count, filled <= 1 << 16 else {
                throw SystemError(errno: ERANGE, syscall: "getgrouplist", path: String(cString: name))
            }
            count = filled
        }
    }
}

extension UserIdentity {
    /// Makes this process not dumpable: a process started as a user (an agent of `ferry serve`)
    /// holds pipes to the server, which that user, owning the process, could otherwise open
    /// through `/proc/PID/fd` (or ptrace it) — to flood the server with output, or hold a
    /// channel open after the process ended. Its /proc entries become root's. (`execve` made it
    /// dumpable again, so it is done by the process itself, first thing.)
    public static func forbidInspection() {
        _ = cferry_set_undumpable()
    }
}
