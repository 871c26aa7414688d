"""ntmobile.core"""
