"""ntmobile.crypto"""
