"""The pure steps of the firstmile flow: typed values in, typed values out."""
