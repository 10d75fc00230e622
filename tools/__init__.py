"""streamvault.tools"""
