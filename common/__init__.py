"""What the node and the server share: wire protocol, geodesy, acoustics, config, time."""
