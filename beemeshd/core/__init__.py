"""Pure core: state + input + time -> decisions. No I/O, no trio, no libp2p, no podman here."""
