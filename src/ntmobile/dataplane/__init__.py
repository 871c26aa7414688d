"""ntmobile.dataplane"""
