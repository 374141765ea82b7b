def pack_command(args: tuple[str | bytes | int | float, ...]) -> bytes:
    """`args` (the command's words) as a RESP array of bulk strings, byte for byte what
    `hiredis.pack_command(args)` returns."""
    ...
