"""streamvault.controlplane"""
