import Foundation

/// One line of `lfs project [-d] [-r] PATH...`.
public struct LustreProjectEntry: Equatable, Sendable {
    public var projectID: UInt32
    /// The inherit flag ("P"): new files and directories below take this project ID.
    public var inherit: Bool
    public var path: String

    public init(projectID: UInt32, inherit: Bool, path: String) {
        self.projectID = projectID
        self.inherit = inherit
        self.path = path
    }
}

/// One line of `lfs project -c [-r] [-p ID] PATH...`.
public struct LustreProjectCheckIssue: Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        /// "PATH - project inheritance flag is not set"
        case inheritNotSet
        /// "PATH - project identifier is not set (inode=N, tree=M)": the inode has ID N where
        /// the tree being checked has M.
        case projectMismatch(inode: UInt32, tree: UInt32)
    }

    public var path: String
    public var kind: Kind

    public init(path: String, kind: Kind) {
        self.path = path
        self.kind = kind
    }
}

/// Reads `lfs project` output (lustre-release `lfs_project.c`).
public enum LfsProjectParser {
    static let command = "lfs project"
    static let inheritSuffix = " - project inheritance flag is not set"
    static let mismatchMarker = " - project identifier is not set (inode="

    /// `lfs project -d` (and the listing without -d): `"%5u %c %s\n"` = ID right-aligned in
    /// 5 columns, 'P' or '-', path. The path is kept exactly as printed (it may hold spaces).
    public static func parseList(_ text: String) throws(LustreParseError) -> [LustreProjectEntry] {
        var result: [LustreProjectEntry] = []
        for line in LustreText.lines(text) where !line.isBlank {
            func fail(_ reason: String) -> LustreParseError {
                LustreParseError(command: command, line: line.number, reason: reason)
            }
            let s = line.text.drop(while: { $0 == " " })
            let digits = s.prefix(while: { $0.isASCII && $0.isNumber })
            guard !digits.isEmpty else { throw fail("expected a project ID at the start of \"\(line.text)\"") }
            guard let id = UInt32(digits, radix: 10) else { throw fail("project ID \(digits) does not fit in 32 bits") }
            var rest = s.dropFirst(digits.count)
            guard rest.first == " " else { throw fail("expected a space after the project ID") }
            rest = rest.dropFirst()
            guard let flag = rest.first, flag == "P" || flag == "-" else {
                throw fail("expected the inherit flag 'P' or '-' after the project ID")
            }
            rest = rest.dropFirst()
            guard rest.first == " ", rest.count > 1 else { throw fail("expected a path after the inherit flag") }
            result.append(LustreProjectEntry(projectID: id, inherit: flag == "P", path: String(rest.dropFirst())))
        }
        guard !result.isEmpty else { throw LustreParseError(command: command, reason: "the output is empty") }
        return result
    }

    /// `lfs project -c`: one line per problem. Empty output means the tree is consistent and
    /// gives an empty list (it is the success case, so it does not throw).
    public static func parseCheck(_ text: String) throws(LustreParseError) -> [LustreProjectCheckIssue] {
        var result: [LustreProjectCheckIssue] = []
        for line in LustreText.lines(text) where !line.isBlank {
            func fail(_ reason: String) -> LustreParseError {
                LustreParseError(command: command, line: line.number, reason: reason)
            }
            let t = line.text
            if t.hasSuffix(inheritSuffix) {
                let path = String(t.dropLast(inheritSuffix.count))
                guard !path.isEmpty else { throw fail("the line has no path") }
                result.append(LustreProjectCheckIssue(path: path, kind: .inheritNotSet))
                continue
            }
            guard let marker = t.range(of: mismatchMarker, options: .backwards) else {
                throw fail("not a `lfs project -c` problem line: \"\(t)\"")
            }
            let path = String(t[..<marker.lowerBound])
            guard !path.isEmpty else { throw fail("the line has no path") }
            // "N, tree=M)"
            let tail = t[marker.upperBound...]
            guard tail.hasSuffix(")"), let comma = tail.range(of: ", tree=") else {
                throw fail("malformed \"(inode=N, tree=M)\" in \"\(t)\"")
            }
            let inodeText = tail[..<comma.lowerBound]
            let treeText = tail[comma.upperBound...].dropLast()
            guard inodeText.allSatisfy({ $0.isASCII && $0.isNumber }), treeText.allSatisfy({ $0.isASCII && $0.isNumber }),
                let inode = UInt32(inodeText, radix: 10), let tree = UInt32(treeText, radix: 10)
            else {
                throw fail("project IDs \"\(inodeText)\" / \"\(treeText)\" are not 32-bit numbers")
            }
            result.append(LustreProjectCheckIssue(path: path, kind: .projectMismatch(inode: inode, tree: tree)))
        }
        return result
    }
}
