/// Filled in by the PostgreSQL store's tests (throwaway cluster on loopback).
let extraStoreEngines: [StoreUnderTest] = []
