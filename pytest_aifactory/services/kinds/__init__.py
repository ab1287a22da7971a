"""One module per service kind, each registering its `ServiceKind` with `@service_kind`
(docs/adding-a-kind.md); `services.base` imports them all, and those of other packages, when a
kind is first asked for."""
