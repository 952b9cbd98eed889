"""What every layer shares: user errors and how commands report them, atomic outputs, crop geometry and the frame
windows, and the choice of device and precision."""
