// FileDescriptor, Errno and FilePath are swift-system's; every user of FerrySystem needs them.
@_exported import SystemPackage
